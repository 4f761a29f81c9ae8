"""The pure core: parsing, typed bodies, derived values, config and the small state structures."""
