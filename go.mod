module github.com/anvilproject/anvil

go 1.26
