from jaxsched.cli import main

main()
