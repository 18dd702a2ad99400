"""Stage 5, reporting: what a run shows a person: terminal tables (``tables``).

May import every stage below it. Never imports the CLI.
"""
