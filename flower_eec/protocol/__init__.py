"""What server and devices agree on: message and record names, typed payloads, reply checks."""
