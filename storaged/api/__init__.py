"""HTTP handlers, one module per API family.  Handlers parse, call a service, render."""
