"""The application: the builder that binds the model services (deployments/), the content pipeline (graphs/) and
the HTTP edge (edge/) into one Serve app (``builder``), and deploying it from a Serve config (``deploy``)."""
