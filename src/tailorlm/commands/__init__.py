"""One module per CLI verb: parse arguments, call one library function, print the result."""
