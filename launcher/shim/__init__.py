"""Child-side Flower code: runs inside client processes, never imported by the launcher process."""
