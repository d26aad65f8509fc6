"""Build the tiny offline models (``make models`` runs it): ``python -m scripts.build_tiny_models [--out DIR]
[--force]``. The recipes are offline/tiny_models.py."""

from offline.tiny_models import main

if __name__ == "__main__":
    main()
