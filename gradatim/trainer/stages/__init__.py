"""One module per stage type, each with `run(spec, rt, store, reporter) -> results`."""
