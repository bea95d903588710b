from segbill import main

if __name__ == "__main__":  # not when a worker process (`--jobs`) imports it
    main()
