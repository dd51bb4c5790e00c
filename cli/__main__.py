from codeplan_cli.main import entry

entry()
