"""Small scenarios built in code: models and image folders for tests, benchmarks and the demo."""
