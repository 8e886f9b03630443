"""Core: the configuration idiom, atomic files, images, paths, reports, vectors and the held-out chooser."""
