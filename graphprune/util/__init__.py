"""Small helpers with no pruning knowledge: atomic writes, progress, tables, gc, torch internals."""
