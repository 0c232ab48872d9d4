"""The catalog wing: the registry replica every data-plane service keeps, and the rules they all
agree on (version resolution, routing policies, composites, lookups, caller signatures).

Depends on the floor only; the V2 face, the services and the CLI build on it.
"""
