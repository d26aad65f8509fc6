"""The app's own routes by family: content, recommendations, health and the studio page."""
