"""Reading a user's data: the MNIST family's IDX files, image folders, and the input spec chosen from them."""
