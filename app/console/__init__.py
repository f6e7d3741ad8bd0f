"""The live console: a page every worker serves at /console, and the data views behind it."""
