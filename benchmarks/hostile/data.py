TRIALS = []
