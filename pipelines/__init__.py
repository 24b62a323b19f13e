"""Pure computation on columnar reading batches: numpy and numba only, no I/O, no clock."""
