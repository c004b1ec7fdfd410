"""`repspec-zoo export | publish | list-pretrained`: one module with ``main(argv)`` per subcommand."""
