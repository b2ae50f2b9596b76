"""Built-in recipes; each registers itself in mm.train.recipe.RECIPES by name."""
