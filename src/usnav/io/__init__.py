"""File formats. The only place where format quirks (1-based pixels, LPS/RAS,
oblique affines, axis order) are converted."""
