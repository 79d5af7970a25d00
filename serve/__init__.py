"""gpusearch.serve: the Ray Serve application (ingress, encoder, shards, aggregator, aliases).

Not built yet: it is the next piece of work after the engine core, and it will
stay a thin layer over :mod:`gpusearch` (every search decision lives there).
"""

__all__: list[str] = []
