"""Data: load files into canonical examples, render chats, check data before a run."""
