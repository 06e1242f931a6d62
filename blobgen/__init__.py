"""criupy-blobgen: builds the parasite and restorer blobs into Python modules."""
