"""The ``seqformer`` command line: thin click wrappers around :mod:`reformer_seq`."""
