"""Pipeline steps: each is a CLI command and a Python function ``main(conf, ...) -> Path``."""
