from vmcp_opt.cli import app

app()
