"""Leaderboards: records to ranked rows (`leaderboard`), rendered (`report`: md, csv, json,
html) with their plots (`plots`)."""
