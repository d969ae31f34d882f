"""Getting the accuracy back: when a repair is due, the ladder of recipes, the search and its trials."""
