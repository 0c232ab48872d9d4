"""The one V2 face: a single Open Inference Protocol servicer (every RPC once, composite
dispatch, NOT_FOUND at the edge, metadata answers, streaming) over a per-service data plane.

Depends on the floor and the catalog wing; gateway, router and worker each supply a data plane.
"""
