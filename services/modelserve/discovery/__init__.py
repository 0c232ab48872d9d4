"""Service discovery backends behind one interface; see ``base``."""

from modelserve.discovery.base import Discovery, Instance, Registration

__all__ = ["Discovery", "Instance", "Registration"]
