from ctit.cli import app

app()
