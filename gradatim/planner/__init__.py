"""Pure decisions about stages and pipelines: create, retry, skip, cache, block. No I/O.

The operator (on a real API server) and local mode (`gradatim run`) both act on the plans returned here.
"""
