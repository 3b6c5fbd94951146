from thumbnailer.cli import main

main()
