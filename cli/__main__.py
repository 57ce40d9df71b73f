from moe_specialists.cli import app

app()
