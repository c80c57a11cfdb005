"""Statistics over finished runs: families of comparable runs, floors, choices and claims."""
