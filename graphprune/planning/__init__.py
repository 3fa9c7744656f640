"""Planning: what to keep, under which budget, measured on which runtime."""
