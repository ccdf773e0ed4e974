"""Model families: registered scratch models and the factory that builds any model from a recipe."""
