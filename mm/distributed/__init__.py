"""distributed of the mm suite (see ../shared/DESIGN.md §1)."""
