"""The `biomip` command line (see ``biomip --help``)."""
