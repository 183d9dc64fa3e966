"""imagegen: the service around the pure ``statemachine`` package (I/O lives here)."""
