"""Registration (textbook ch. 7) -- work in progress: transforms and losses first."""
