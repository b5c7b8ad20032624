"""Input and output: the sweep's storage (a directory or an object store, each node's copy, content-addressed
caches), the packed artifact format, checkpoints, the sweep's own files and the records written in them,
and the front as files a person opens."""
