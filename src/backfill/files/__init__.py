"""Files on disk: image facts and decoding, render names, fingerprints, result
caches and atomic writes."""
