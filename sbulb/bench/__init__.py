"""sbulb's benchmark: the same bounded UDP load through sbulb and through
what a user would pick instead, in one lab, in one run (`make bench`)."""
