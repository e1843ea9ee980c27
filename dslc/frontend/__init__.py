"""The front end: .net text -> AST (parse, to_ast) -> typed graph IR (resolve, recipe)."""
