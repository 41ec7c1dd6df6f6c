module connredir.example/proxy

go 1.19
