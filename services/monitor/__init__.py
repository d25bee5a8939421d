"""The access monitor: faust-streaming rules over the access stream (README.md)."""
