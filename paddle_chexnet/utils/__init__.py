"""Small shared pieces: atomic writes (``io``), SHA-256 (``hashing``), the cache root (``paths``), usable cores
(``system``) and the device choice (``device``)."""
