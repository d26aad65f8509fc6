"""The offline profile's material: tiny, seeded, random-weight models built through the real libraries and saved
in their formats (``tiny_models``), the corpus the tiny text model learns words from (``corpus``), and synthetic
interactions with planted communities (``interactions``: the tiny recommender's seed, the evaluation's data set,
the benchmark's catalogues). Nothing here is downloaded."""
