print("fedlm")
